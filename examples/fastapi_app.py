"""A small FastAPI service for uvicorn: each request awaits a "database", then ranks documents
for the query (the CPU work, in `rank_documents`).

Unmodified, under the runner (uvicorn's workers are spawned Python processes: each starts
pyprofiler from the runner's variables, and the port answers for the service):

    python -m pyprofiler run --port 6060 uvicorn --app-dir examples fastapi_app:app --workers 2

Or with serve() at import (each worker calls it with the same port, and they answer as one):

    PPROF_PORT=6060 uvicorn --app-dir examples fastapi_app:app --workers 2

Then put it under load and profile it:

    python examples/load.py 'http://127.0.0.1:8000/search?q=profiling' --seconds 60 &
    go tool pprof -top 'http://127.0.0.1:6060/debug/pprof/profile?seconds=10'
    go tool pprof -traces -tagfocus kind=task 'http://127.0.0.1:6060/debug/pprof/goroutine'
"""

import asyncio
import os

from fastapi import FastAPI

import pyprofiler

# This app's own switch for serving at import; under `python -m pyprofiler run`, leave it unset.
if os.environ.get("PPROF_PORT"):
    pyprofiler.serve(port=int(os.environ["PPROF_PORT"]))

app = FastAPI()

DOCUMENTS = [
    " ".join(f"word{(d * 31 + w * 17) % 500}" for w in range(120)) + (" profiling" * (d % 5))
    for d in range(200)
]


async def fetch_candidates(query: str) -> list[str]:
    await asyncio.sleep(0.005)  # The database round trip: the task waits, using no CPU.
    return DOCUMENTS


def rank_documents(query: str, documents: list[str]) -> list[tuple[float, int]]:
    terms = query.lower().split()
    scores = []
    for index, document in enumerate(documents):
        words = document.split()
        counts: dict[str, int] = {}
        for word in words:
            counts[word] = counts.get(word, 0) + 1
        score = sum(counts.get(term, 0) for term in terms) / (1 + len(words))
        scores.append((score, index))
    return sorted(scores, reverse=True)


@app.get("/search")
async def search(q: str = "profiling") -> dict:
    documents = await fetch_candidates(q)
    ranked = rank_documents(q, documents)
    return {"query": q, "top": [index for _, index in ranked[:5]]}
