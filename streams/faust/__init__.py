"""The NPO pipeline inside Faust apps: `install(app, settings)` mounts its agents (`host.py`); `app.py` is a ready app; `records.py` has `faust.Record` models of the NPO events."""
