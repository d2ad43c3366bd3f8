"""`npo demo` and `npo replay`: the pipeline in process, on simulated or recorded events."""
