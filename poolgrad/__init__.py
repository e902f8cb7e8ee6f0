"""poolgrad: the SDK for the poolgrad gradient-compute service (being written; see issue 4)."""
