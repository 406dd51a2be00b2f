"""User-facing errors.

Every error a user can cause (a bad file, a missing value, a wrong shape) is a
``FetalkitError`` whose message names the file and what to do.  The CLI turns it
into one red line and a non-zero exit; it is never shown as a traceback.
"""


class FetalkitError(Exception):
    """An error caused by user input, with a message that says how to fix it."""


class InputError(FetalkitError):
    """An input file cannot be read or does not hold what was expected."""


class DataError(FetalkitError):
    """A dataset folder is missing, empty or in the wrong layout."""


class ModelError(FetalkitError):
    """A model file or card is missing, invalid or of the wrong kind."""


class MeasurementError(FetalkitError):
    """A measurement could not be made on an otherwise valid input (e.g. no head found)."""


class OutOfDomainError(MeasurementError):
    """An input is not what the model was made for, so nothing is measured on it.

    ``fields`` are the row's columns that stand anyway (``plane_score``, ``plane_ok``).
    """

    def __init__(self, message: str, fields: dict):
        super().__init__(message)
        self.fields = dict(fields)


class RequestError(FetalkitError):
    """A web request cannot be served as sent (too large, a missing field, an unknown job, a wrong token).

    ``status`` is the HTTP status the web app answers with (4xx).
    """

    def __init__(self, message: str, status: int = 400):
        super().__init__(message)
        self.status = status
