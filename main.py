"""Run the service: `python main.py` (host and port from NN_HOST / NN_PORT) or `uvicorn main:app`;
installed with pip, the same is the `nn-service` command (`api/serve.py`).

`python main.py worker` starts a training worker for NN_BACKEND=redis (an RQ worker on NN_REDIS_QUEUE).
"""

import sys

from api.serve import build_app, main

if __name__ == "__main__":
    sys.exit(main(prog="python main.py"))  # reads the arguments first: `--help` or a typo builds nothing
elif __name__ != "__mp_main__":  # a training worker process (spawned) re-imports this file and needs no app
    app = build_app()  # `uvicorn main:app`
