"""The NPO pipeline as a Faust app of its own: `faust -A streams.faust.app worker --without-web -l info`.

Settings come from the environment and `NPO_CONFIG_FILE` as for `npo worker` (`NPO_KAFKA_*`,
`NPO_TOPIC_PREFIX`, `NPO_GROUP_ID`, `NPO_STATE_DIR`, ...), the monitor's configuration
from that file's `[monitor]` section. The latest statistics and
cool-downs go to Redis, and thresholds are read from it, when `NPO_REDIS_URL` is set.
To run the agents inside an app of your own, call `install` on it instead.
"""
from __future__ import annotations

import os

from streams.config import monitor_config_from
from streams.faust.connect import create_app
from streams.faust.host import install
from streams.settings import Settings, load, monitor_section


def _sink(settings: Settings):
    if not os.environ.get("NPO_REDIS_URL"):
        return None
    from streams.state.redis_store import RedisSink, RedisStore

    sink = RedisSink(lambda: RedisStore.from_url(settings.redis_url, password=settings.redis_password,
                                                 namespace=settings.redis_namespace))
    sink.start_background(2.0)
    return sink


settings = load()
app = create_app(settings)
host = install(app, settings, monitor_config_from(monitor_section(os.environ.get("NPO_CONFIG_FILE"))),
               sink=_sink(settings))
