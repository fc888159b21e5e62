"""The one error type of the edit engine."""


class EditError(ValueError):
    """A request the engine refuses: bad tool, bad parameters, or a malformed patch.

    Subclassing ValueError lets callers that know nothing of CellLoop still catch it;
    the API maps it to HTTP 400 and shows ``str(error)`` to the user, so messages name
    the offending parameter and the accepted range.
    """
