# gunicorn reads this file when started from the project folder: `gunicorn` alone serves ranker
# with the same settings as `ranker serve`.
from ranker.server.gunicorn_config import *  # noqa: F403
