"""Audits of what an output still reveals: ``fetalkit audit deid`` and ``fetalkit audit mask``.

The machine version of the masking paper's sonographer test, usable on any output,
fetalkit's or another tool's:

* :func:`fetalkit.audit.deid.audit_deid` - a de-identified file against its original:
  the PS3.15 profile's required actions, identifying strings left anywhere in the file,
  residual burned-in text in the pixels (:func:`fetalkit.audit.pixels.residual_text`),
  colour, size and frames.
* :func:`fetalkit.audit.mask.audit_mask` - a masked clip against its original: per frame,
  whether what a detector finds in the original is hidden in the output.

Both return a dataclass with ``as_dict()`` (JSON) and ``summary()`` (one line).
Reports name attributes, never their values.  See docs/audit.md.
"""
