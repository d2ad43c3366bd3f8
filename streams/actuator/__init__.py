"""`npo actuator`: threshold advice applied to Redis behind guard rails, each change on
probation and reverted if the loss got worse; every decision published to `actions`."""
