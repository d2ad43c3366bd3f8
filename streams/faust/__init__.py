"""The NPO pipeline inside Faust apps: `install(app, settings)` mounts its agents (`host.py`); `app.py` is a ready app; `records.py` has `faust.Record` models of the NPO events."""
from streams.worker.memory import small_pages_for_arrays

small_pages_for_arrays()  # a Faust worker is not started by `npo`, which would set it before numpy is imported
