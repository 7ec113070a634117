"""The error types every package raises for what a user caused or can fix.

`odyssey` prints such an error as one line and exits non-zero; it never holds a secret. Programming errors
(a tensor of the wrong shape handed to a cell, an argument of the wrong type) raise Python's built-in types
and surface as tracebacks, because no user action fixes them.

    OdysseyError            anything the user can fix
    +-- ConfigError         a wrong spec, option, variant, dataset file or other input (also a ValueError)
    +-- StorageError        a bad storage URL, an unreachable or refused database, a missing study

ConfigError: spec fields (`sweep.spec`), command-line options and environment settings, variant, dataset,
objective and device names, the contents of data files, the settings and data handed to fANOVA and the
analysis. StorageError: the storage URL, a database that cannot be reached or refuses the login or a
statement (`odyssey query`'s read-only rules), a results schema too old or too new
(`storage.schema_version`), a study that does not exist, is half created or exists with another spec.

A plain OdysseyError is left where neither fits, because the cause is neither a wrong input nor the database:
the C++ kernels cannot be built on this machine (`odyssey kernels --require`, ODYSSEY_CELLS_BACKEND=cpp),
a worker stops because its trials keep failing, a local run's worker process exits non-zero, and the file
system refuses an output file (`odyssey export`, `odyssey report`: permissions, a full disk).
"""


class OdysseyError(Exception):
    """An error the user caused or can fix; its message is one line and holds no secret."""


class ConfigError(OdysseyError, ValueError):
    """Wrong input: a spec field, a command-line option, a variant or dataset name, a data file's contents.

    Also a `ValueError`, so that code validating values (pydantic validators, `int()`-style parsing) and
    callers that catch `ValueError` see it for what it is.
    """


class StorageError(OdysseyError):
    """The results or study storage cannot serve the request: a bad URL, a database that is down, refuses
    the credentials or holds a schema this release cannot read, or a study that does not exist."""
