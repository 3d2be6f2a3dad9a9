"""Orchestration: the run spec and its defaults (spec), planning and running an edit end to end
(pipeline), recipes (recipebook) and offline mirrors of published data (mirror)."""
