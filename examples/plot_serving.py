"""
Serving a saved pipeline over HTTP
==================================

A fitted pipeline is saved in the ``.skops`` format, which is safe to load: it rebuilds only
trusted types and never runs code from the file. The file holds each encoder's model name and the
fingerprint of its weights, not the weights, so it stays small.

:func:`skdeep.create_app` turns a saved pipeline into a FastAPI application; ``skdeep serve
model.skops`` runs the same application with uvicorn. Here the application is queried
in-process with FastAPI's test client, so the example needs no free port; the requests and
answers are the ones a real server gives.
"""

# %%
# Train and save
# --------------
import tempfile
from pathlib import Path

from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline

from skdeep import TextEncoder, save
from skdeep.datasets import fetch_rotten_tomatoes

data = fetch_rotten_tomatoes().sample(300, random_state=3)
labels = data["label"].map({1: "fresh", 0: "rotten"})
pipe = make_pipeline(TextEncoder("all-MiniLM-L6-v2"), LogisticRegression(max_iter=1000))
pipe.fit(data["text"], labels)

folder = Path(tempfile.mkdtemp())
path = save(pipe, folder / "sentiment.skops")
print(f"{path.name}: {path.stat().st_size:,} bytes")

# %%
# ``skdeep info sentiment.skops`` describes such a file without serving it; loading it back
# checks the fingerprint of the model found on this machine against the one saved.
from skdeep import load

print(load(path))

# %%
# Build the application and query it
# ----------------------------------
# The model is loaded once, when the application starts, and every endpoint runs once on a dummy
# input, so the first request does not pay for loading the weights. Each request carries a list
# of texts; requests that arrive together are joined into one model call (micro-batching), and
# each gets its own rows back. ``/metadata`` says what the server holds, and bad input gets an
# answer that names the bad item, never a server error.
from fastapi.testclient import TestClient

from skdeep import create_app

reviews = ["A warm, funny and moving film.", "A tedious, joyless mess."]
with TestClient(create_app(path)) as client:  # entering runs the start-up: loading and warm-up
    print("GET  /health        ", client.get("/health").json())
    print("POST /predict       ", client.post("/predict", json={"inputs": reviews}).json())
    print("POST /predict_proba ", client.post("/predict_proba", json={"inputs": reviews[:1]}).json())
    metadata = client.get("/metadata").json()
    print("GET  /metadata      ", {key: metadata[key] for key in ("classes", "input_kind")})
    answer = client.post("/predict", json={"inputs": ["fine", 42]})
    print("POST /predict       ", answer.status_code, answer.json())
