"""Run the service: `python main.py` (host and port from NN_HOST / NN_PORT) or `uvicorn main:app`;
installed with pip, the same is the `nn-service` command (`api/serve.py`).

`python main.py worker` starts a training worker for NN_BACKEND=redis (an RQ worker on NN_REDIS_QUEUE).
"""

import sys

from api.serve import build_app, run

app = build_app()

if __name__ == "__main__":
    sys.exit(run(app, sys.argv[1:]))
