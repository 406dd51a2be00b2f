"""Is an input what a model was made for?  The domain check of every bundled model, torch-free.

Each bundled model's card names its domain (``card["domain"]``): the anatomy classes of
the view classifier (``fetalkit.datasets.views.PUBLIC_VIEW_CLASSES``) it was made for
and a threshold, chosen on the classifier's validation part so that 99 % of in-domain
images pass (``fetalkit eval domain``, which also writes the held-out AUROC and
false-accept rate into the card).  The score of an image is the highest probability
among those classes, in [0, 1]: an image must look like one kind the model was made
for, not half like each (a summed probability let an adult cardiac cine through as
0.89 head + 0.06 transperineal):

* ``head-unet-mnv2`` (``biometry head``): ``fetal_head``;
* ``psfhs-unet-mnv2`` (``biometry aop``): ``intrapartum_transperineal``;
* the PSFHS detector (``mask``, ``detect``): ``intrapartum_transperineal`` and ``fetal_head``
  (its two classes);
* ``view-mnv2`` itself and the overlay model: every ultrasound class (one minus
  ``not_ultrasound``).

A model whose card names no domain (a user's own) is not checked: :meth:`DomainCheck.for_card`
returns None.

>>> check = DomainCheck.for_card(read_card(resolve_model(None, "head-seg")))   # doctest: +SKIP
>>> verdict = check.judge(gray)                                                # doctest: +SKIP
>>> verdict.ok, verdict.score, verdict.anatomy                                 # doctest: +SKIP
(False, 0.03, 'other_fetal_plane')
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import numpy as np

from fetalkit.errors import ModelError, OutOfDomainError
from fetalkit.io.inputs import printable

DEFAULT_CLASSIFIER = "view-mnv2-int8"

# What each bundled model is made for, by the view classifier's anatomy classes.
MODEL_DOMAINS = {
    "head-seg": ("fetal_head",),
    "psfhs-seg": ("intrapartum_transperineal",),
    "detector": ("intrapartum_transperineal", "fetal_head"),
    "view": ("fetal_head", "intrapartum_transperineal", "fetal_heart", "other_fetal_plane"),
    "overlay-seg": ("fetal_head", "intrapartum_transperineal", "fetal_heart", "other_fetal_plane"),
}

# What a refusal says each model was made for.
DOMAIN_WORDS = {
    "fetal_head": "fetal head planes (trans-thalamic / trans-ventricular)",
    "intrapartum_transperineal": "intrapartum transperineal scans",
    "fetal_heart": "fetal heart views",
    "other_fetal_plane": "other fetal planes",
}


@dataclass(frozen=True)
class DomainVerdict:
    """One image's domain check: ``score`` in [0, 1], ``ok`` when it reaches the threshold."""

    score: float
    ok: bool
    anatomy: str          # the view classifier's most likely class
    threshold: float

    def as_fields(self) -> dict:
        """The ``plane_score`` / ``plane_ok`` columns of a measurements table."""
        return {"plane_score": f"{self.score:.3f}", "plane_ok": "true" if self.ok else "false"}


def describe_domain(classes: tuple[str, ...]) -> str:
    """``"fetal head planes (...)"``: what a model with these domain classes was made for."""
    if set(classes) >= set(MODEL_DOMAINS["view"]):
        return "ultrasound images"
    return " and ".join(DOMAIN_WORDS.get(c, c) for c in classes)


class DomainCheck:
    """The highest probability of ``classes`` under the view classifier, against ``threshold``."""

    def __init__(self, classes: tuple[str, ...], threshold: float, classifier: str = DEFAULT_CLASSIFIER,
                 threads: int = 1):
        from fetalkit.runtime.classifier import ViewClassifier
        self.view = ViewClassifier(classifier, threads=threads)
        unknown = [c for c in classes if c not in self.view.classes]
        if unknown:
            raise ModelError(f"domain classes {', '.join(unknown)} are not classes of the view classifier "
                             f"{classifier} ({', '.join(self.view.classes)})")
        self.classes = tuple(classes)
        self.threshold = float(threshold)
        self.columns = np.array([self.view.classes.index(c) for c in classes])

    @classmethod
    def for_card(cls, card: dict, threads: int = 1) -> Optional["DomainCheck"]:
        """The check a model's card asks for, or None when the card names no domain."""
        domain = card.get("domain")
        if not domain:
            return None
        return cls(tuple(domain["classes"]), float(domain["threshold"]),
                   domain.get("classifier", DEFAULT_CLASSIFIER), threads)

    @classmethod
    def of(cls, model, threads: int = 1) -> Optional["DomainCheck"]:
        """The check of a loaded model (anything with a ``card``); None when it has no card or no domain."""
        return cls.for_card(getattr(model, "card", None) or {}, threads)

    @property
    def made_for(self) -> str:
        return describe_domain(self.classes)

    def scores(self, images: list[np.ndarray]) -> np.ndarray:
        """N domain scores in [0, 1] (the classifier's highest probability among the domain classes);
        grey or BGR frames."""
        probs = self.view.probabilities([_gray(im) for im in images])
        return domain_score(probs, self.columns)

    def require(self, path, image: np.ndarray, refusal: str, measure: str, force: bool = False) -> dict:
        """The ``plane_score`` / ``plane_ok`` columns of one image to be measured.

        Outside the domain (and without ``force``) raises :class:`OutOfDomainError` naming
        the file, the score, what the image looks like and the way out, e.g. "scan.png: not a
        fetal head plane (score 0.04, ...): HC not measured; --force measures anyway".
        """
        verdict = self.judge(image)
        fields = verdict.as_fields()
        if not verdict.ok and not force:
            raise OutOfDomainError(
                f"{printable(path)}: {refusal} (score {verdict.score:.2f}, threshold {verdict.threshold:.2f}; it "
                f"looks like {verdict.anatomy.replace('_', ' ')}): {measure} not measured; --force measures anyway",
                fields)
        return fields

    def judge(self, image: np.ndarray) -> DomainVerdict:
        probs = self.view.probabilities([_gray(image)])[0]
        score = float(domain_score(probs[None], self.columns)[0])
        return DomainVerdict(score, score >= self.threshold, self.view.classes[int(probs.argmax())], self.threshold)


def domain_score(probs: np.ndarray, columns) -> np.ndarray:
    """N x C class probabilities -> N scores: the highest probability among ``columns``."""
    return np.clip(probs[:, columns].max(axis=1), 0.0, 1.0)


def _gray(image: np.ndarray) -> np.ndarray:
    """The classifier sees grey frames, as it was trained (BGR -> luma, as fetalkit reads images)."""
    import cv2
    return cv2.cvtColor(image, cv2.COLOR_BGR2GRAY) if image.ndim == 3 else image
