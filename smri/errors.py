"""Exceptions that carry a user-facing message: the CLI prints them as one line, no traceback."""


def plural(n: int, noun: str, nouns: str | None = None) -> str:
    """``1 voxel``, ``2 voxels``: a count and its noun, for messages (`nouns`: an odd plural)."""
    return f"{n} {noun if n == 1 else nouns or noun + 's'}"


def keyword_of(option: str) -> str:
    """The API keyword of a command-line option or argument: ``--no-amp`` -> ``amp``,
    ``--batch-size`` -> ``batch_size``, ``PATIENT_ID`` -> ``patient_id``."""
    name = option[5:] if option.startswith("--no-") else option.lstrip("-")
    return name.replace("-", "_").lower()


class SmriError(Exception):
    """A problem with the user's data or files (the CLI exits 1)."""


class DataError(SmriError):
    """Input data that cannot be used: a broken NIfTI, a bad labels CSV, an invalid store."""


class PatientError(DataError):
    """One patient cannot be used; preprocessing skips it (or stops, with --strict)."""

    def __init__(self, patient_id: str, message: str):
        super().__init__(f"patient {patient_id}: {message}")
        self.patient_id = patient_id
        self.reason = message

    def __reduce__(self):  # picklable: workers return it to the parent as a value
        return (type(self), (self.patient_id, self.reason))


class ConfigError(SmriError):
    """Settings that contradict each other or the data (exit 2 when an option is at fault).

    `option` names the setting at fault as the command line spells it (``--batch-size``);
    `keyword` as the Python API does (``batch_size``).
    """

    def __init__(self, message: str, option: str | None = None):
        super().__init__(message)
        self.option = option

    @property
    def keyword(self) -> str | None:
        """The API keyword of `option` (None when no option is at fault)."""
        return None if self.option is None else keyword_of(self.option)

    def __reduce__(self):
        return (type(self), (str(self), self.option))


class RunInterrupted(KeyboardInterrupt):
    """Ctrl-C during `smri.train`: the message says what the run folder kept and how to go on."""
