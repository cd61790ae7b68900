"""
One embedding cache shared by several processes
===============================================

An :class:`~skdeep.EmbeddingCache` given a folder keeps its vectors in a SQLite file there, which
several processes can use at once: the workers of a ``GridSearchCV(n_jobs=2)``, Dask workers on
one machine, a notebook and a script. Each vector is stored under a key that hashes the model's
weights, the settings that change the output, and the input's content, so two different models
or settings never read each other's vectors.

When workers miss the same inputs at the same time, they *claim* them first: one worker embeds
each input, and the others wait for it and read the vector from the cache.
"""

# %%
# Two worker processes, the same texts
# ------------------------------------
# Each worker (a separate Python process started by joblib) embeds the same 200 snippets with a
# disk cache in a fresh folder, and reports what its cache did.
import os
import tempfile
import time

from joblib import Parallel, delayed

from skdeep.datasets import fetch_rotten_tomatoes

texts = fetch_rotten_tomatoes().sample(200, random_state=4)["text"].tolist()
folder = tempfile.mkdtemp()


def embed_in_worker(texts, folder):
    from skdeep import EmbeddingCache, TextEncoder

    cache = EmbeddingCache(folder)
    encoder = TextEncoder("all-MiniLM-L6-v2", cache=cache).fit(texts[:1])  # loads the model
    start = time.perf_counter()
    encoder.transform(texts)
    return os.getpid(), cache.stats, time.perf_counter() - start


results = Parallel(n_jobs=2, backend="loky")(delayed(embed_in_worker)(texts, folder) for _ in range(2))
for pid, stats, seconds in results:
    # A miss this worker did not compute was claimed by the other one: it waited and read the vector.
    print(
        f"worker {pid}: {stats.misses} misses; computed {stats.writes:3d}, "
        f"read {stats.misses - stats.writes:3d} computed by the other worker ({seconds:.1f} s)"
    )
print(f"vectors computed in all: {sum(stats.writes for _, stats, _ in results)} for {len(set(texts))} distinct texts")

# %%
# Each snippet was embedded by exactly one worker; the other read the result. How the 200 split
# between them depends on which worker loaded the model first.
#
# Another process, later
# ----------------------
# The vectors stay in the folder. This process opens the same cache and finds all of them: the
# "transform" below runs no model at all.
from skdeep import EmbeddingCache, TextEncoder

cache = EmbeddingCache(folder)
encoder = TextEncoder("all-MiniLM-L6-v2", cache=cache).fit(texts[:1])
cache.reset_stats()
start = time.perf_counter()
X = encoder.transform(texts)
warm = time.perf_counter() - start
print(cache.stats)
print(f"{X.shape[0]} embeddings read in {warm:.3f} s")

# %%
# What a key is
# -------------
# A different setting that changes the output gets different keys, so it never reads these
# vectors. ``max_length=16`` truncates the texts, hence new embeddings: all misses.
cache.reset_stats()
TextEncoder("all-MiniLM-L6-v2", max_length=16, cache=cache).fit_transform(texts[:20])
print(cache.stats)

# %%
# Settings that do not change the vectors, such as ``batch_size`` or ``show_progress``, share the
# keys; ``normalize=True`` is applied after the cache, so it shares them too:
cache.reset_stats()
TextEncoder("all-MiniLM-L6-v2", batch_size=8, normalize=True, cache=cache).fit_transform(texts[:20])
print(cache.stats)

# %%
import matplotlib.pyplot as plt

fig, ax = plt.subplots(figsize=(7, 2.4))
bars = {f"worker {i + 1}, cold cache": seconds for i, (_, _, seconds) in enumerate(results)}
bars["later process, warm cache"] = warm
ax.barh(list(bars), list(bars.values()), color=["tab:orange", "tab:orange", "tab:blue"])
for i, seconds in enumerate(bars.values()):
    ax.text(seconds, i, f" {seconds:.3g} s", va="center")
ax.set_xlim(0, 1.25 * max(bars.values()))
ax.set_xlabel(f"seconds to transform {len(texts)} snippets, model loaded")
fig.tight_layout()
