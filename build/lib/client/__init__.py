"""A small Python client for the training service; needs only `httpx` (and NumPy to pass arrays).

    from client import Client
    api = Client("http://127.0.0.1:8000", api_key=None)
    api.create_model([2, 16, 1], activations=["relu", "sigmoid"], model_id="moons")
    job = api.train("moons", inputs=x, targets=y, epochs=50)
    final = job.wait(progress=True)      # a terminal progress bar, following the SSE stream
    api.output("moons", x[:5])["predictions"]
"""
from .api import ApiError, Client, Job

__all__ = ["Client", "Job", "ApiError"]
