"""skdeep on a real ``dask.distributed`` cluster: two worker processes started by the tests.

Work done by the workers is counted through ``SKDEEP_ENCODE_LOG``: every process appends the number
of rows that reached a model, so the sum over the file is the number of rows embedded cluster-wide.
There is no GPU here: "one GPU per worker" is exercised with a fake ``GPU`` worker resource.
"""

from __future__ import annotations

import logging
import os
import pickle
import signal
import sys
import time

import numpy as np
import pandas as pd
import pytest

distributed = pytest.importorskip("distributed")
import cloudpickle  # noqa: E402
import dask  # noqa: E402
import dask.bag as db  # noqa: E402
import dask.dataframe as dd  # noqa: E402
from joblib import parallel_backend  # noqa: E402
from sklearn.linear_model import LogisticRegression  # noqa: E402
from sklearn.model_selection import GridSearchCV, cross_val_score  # noqa: E402
from sklearn.pipeline import make_pipeline  # noqa: E402

from skdeep import FingerprintMismatchError, TextEncoder  # noqa: E402
from skdeep.dask import (  # noqa: E402
    WORKER_CONFIG,
    describe_workers,
    embed,
    embed_frame,
    embed_to_parquet,
    warm_cache,
)

N_WORKERS = 2
# Differences in thread counts between the workers (1 thread) and this process change the order of
# float32 sums; anything beyond this is a real difference.
ATOL = 1e-5


def _texts(n, prefix=""):
    words = ["good", "bad", "film", "movie", "the", "a"]
    return [f"{prefix}{words[i % 6]} {words[(i * 7) % 6]} number {i} {'!' * (i % 4)}" for i in range(n)]


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    """Two single-threaded worker processes; their encode log and home folder live in a temp dir."""
    root = tmp_path_factory.mktemp("dask_cluster")
    log = root / "encode.log"
    env = {
        "SKDEEP_ENCODE_LOG": str(log),
        "SKDEEP_HOME": str(root / "skdeep_home"),
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        "TOKENIZERS_PARALLELISM": "false",
    }
    with dask.config.set(WORKER_CONFIG):
        local = distributed.LocalCluster(
            n_workers=N_WORKERS,
            threads_per_worker=1,
            processes=True,
            dashboard_address=None,
            silence_logs=logging.CRITICAL,
            env=env,
        )
    client = distributed.Client(local)
    # Helpers defined here travel by value: the workers need not import this test module.
    cloudpickle.register_pickle_by_value(sys.modules[__name__])
    try:
        yield client, log, local
    finally:
        cloudpickle.unregister_pickle_by_value(sys.modules[__name__])
        client.close()
        local.close()


@pytest.fixture
def client(cluster):
    """The cluster's client, with both workers up and the encode log emptied."""
    client, log, _ = cluster
    # Only the last test removes a worker.
    client.wait_for_workers(N_WORKERS, timeout=60)
    log.write_text("")
    return client


@pytest.fixture
def rows_encoded(cluster):
    """Rows embedded by the workers since the test started."""
    _, log, _ = cluster

    def count():
        return sum(int(line) for line in log.read_text().split())

    return count


def _is_embedding_task(record):
    # Dask fuses the partition task with its aliases: its name can change but keeps this part.
    return "embed_partition" in str(record["key"])


def _reference(model, texts):
    return TextEncoder(model, cache=None).fit_transform(texts)


# ---------------------------------------------------------------------------------------------
# embedding collections


@pytest.mark.timeout(120)
def test_embed_dask_collections_equals_in_process(client, tiny_text_model):
    texts = _texts(90)
    expected = _reference(tiny_text_model, texts)
    # Fitted here, so that no call needs a probe fit on a worker (tested below).
    encoder = TextEncoder(tiny_text_model, cache=None).fit(texts[:1])

    series = dd.from_pandas(pd.Series(texts, index=np.arange(90) * 10, name="text"), npartitions=3)
    bag = db.from_sequence(texts, npartitions=4)
    for collection in (series, series.to_frame(), bag, texts, np.asarray(texts, dtype=object)):
        result = embed(collection, encoder, partition_size=40)
        assert result.dtype == np.float32
        computed = result.compute()
        assert computed.shape == expected.shape, type(collection)
        np.testing.assert_allclose(computed, expected, atol=ATOL, err_msg=str(type(collection)))

    # In-memory inputs have known block lengths; Dask DataFrames do not until computed.
    assert embed(texts, encoder, partition_size=40).chunks == ((40, 40, 10), (32,))
    assert np.isnan(embed(series, encoder).shape[0])

    frame = embed_frame(series, encoder).compute()
    assert list(frame.index) == list(np.arange(90) * 10)
    assert list(frame.columns) == [f"textencoder{i}" for i in range(32)]
    np.testing.assert_allclose(frame.to_numpy(), expected, atol=ATOL)

    frame = embed_frame(texts, encoder, partition_size=40).compute()
    assert list(frame.index) == list(range(90))

    # An empty first partition: the probe fit of an unfitted encoder moves on to the next one.
    tail = series[series.index >= 300]
    result = embed(tail, TextEncoder(tiny_text_model, cache=None)).compute()
    np.testing.assert_allclose(result, expected[30:], atol=ATOL)


@pytest.mark.timeout(120)
def test_embed_to_parquet_round_trip(client, tiny_text_model, tmp_path):
    texts = _texts(50)
    series = dd.from_pandas(pd.Series(texts, index=pd.Index(np.arange(50) + 1000, name="doc_id")), npartitions=2)
    embed_to_parquet(series, TextEncoder(tiny_text_model, cache=None), tmp_path / "emb")

    assert len(list((tmp_path / "emb").glob("*.parquet"))) == 2  # one file per partition
    written = pd.read_parquet(tmp_path / "emb").sort_index()
    assert written.index.name == "doc_id"
    assert list(written.index) == list(np.arange(50) + 1000)
    np.testing.assert_allclose(written.to_numpy(), _reference(tiny_text_model, texts), atol=ATOL)


def test_bad_collections_are_named(tiny_text_model):
    encoder = TextEncoder(tiny_text_model, cache=None)
    two_columns = dd.from_pandas(pd.DataFrame({"title": ["a"], "body": ["b"]}), npartitions=1)
    with pytest.raises(ValueError, match=r"2 columns \['title', 'body'\]"):
        embed(two_columns, encoder)
    with pytest.raises(TypeError, match="single str"):
        embed("one text", encoder)
    with pytest.raises(TypeError, match="generator"):
        embed((t for t in ["a"]), encoder)
    with pytest.raises(ValueError, match="empty"):
        embed([], encoder)
    with pytest.raises(ValueError, match="partition_size"):
        embed(["a"], encoder, partition_size=0)
    with pytest.raises(ValueError, match="cache=None"):
        warm_cache(["a"], encoder)


def test_encoder_travels_as_one_small_key(tiny_text_model):
    """The graph holds the encoder once, as pickled parameters (not weights), for all partitions;
    no estimator object is in the graph, so the scheduler never needs the model to unpickle it."""
    encoder = TextEncoder(tiny_text_model, cache=None).fit(["a"])
    with dask.config.set(scheduler="sync"):
        result = embed(_texts(100), encoder, partition_size=10)
    graph = dict(result.__dask_graph__())
    holders = [key for key in graph if str(key).startswith("skdeep-encoder")]
    assert len(holders) == 1
    blob = graph[holders[0]].value
    assert isinstance(blob, bytes) and len(blob) < 2_000
    assert pickle.loads(blob).get_params() == encoder.get_params()
    embed_tasks = [task for key, task in graph.items() if str(key).startswith("_embed_partition")]
    assert len(embed_tasks) == 10
    assert all(holders[0] in task.dependencies for task in embed_tasks)
    assert not any(isinstance(getattr(node, "value", None), TextEncoder) for node in graph.values())


@pytest.mark.timeout(120)
def test_worker_with_other_weights_refuses_to_embed(client, tiny_text_model):
    """A fitted encoder carries its weights' fingerprint; a worker whose copy differs must fail."""
    encoder = TextEncoder(tiny_text_model, cache=None).fit(["a"])
    encoder.model_fingerprint_ = "0" * 32  # as if fitted on other weights than the workers have
    with pytest.raises(FingerprintMismatchError, match="weights changed since fitting"):
        embed(_texts(20), encoder, partition_size=10).compute()


def _install_load_counter():
    """On a worker: count the models actually loaded (registry misses), per process."""
    import skdeep.backends as backends

    backends.clear_backends()
    if not hasattr(backends, "_test_original_get_or_load"):
        backends._test_original_get_or_load = backends.get_or_load

        def counting_get_or_load(key, loader):
            def counted():
                backends._test_loads += 1
                return loader()

            return backends._test_original_get_or_load(key, counted)

        backends.get_or_load = counting_get_or_load
    backends._test_loads = 0


def _loads_in_this_process():
    import skdeep.backends as backends

    return os.getpid(), backends._test_loads


@pytest.mark.timeout(120)
def test_model_loaded_once_per_worker_not_per_partition(client, tiny_text_model, rows_encoded):
    client.run(_install_load_counter)
    texts = _texts(120)
    with distributed.get_task_stream(client=client) as stream:
        embed(texts, TextEncoder(tiny_text_model, cache=None), partition_size=10).compute()

    ran_on = {}
    for record in stream.data:
        if _is_embedding_task(record):
            ran_on[record["worker"]] = ran_on.get(record["worker"], 0) + 1
    assert sum(ran_on.values()) == 12
    loads = client.run(_loads_in_this_process)
    for address, (pid, n_loads) in loads.items():
        # A worker that ran partitions loaded the model exactly once; one that ran none may have
        # loaded it for the probe fit (the encoder here is unfitted).
        assert n_loads == 1 if address in ran_on else n_loads <= 1, (address, pid, n_loads)
    assert max(ran_on.values()) > 1  # so "once per worker" is not "once per partition" by accident
    assert rows_encoded() == 120

    # WORKER_CONFIG took effect: Dask's malloc setting, which slows model inference, is unset.
    assert set(client.run(os.environ.get, "MALLOC_TRIM_THRESHOLD_").values()) == {None}

    reports = describe_workers(client)
    assert {r["pid"] for r in reports.values()} == {pid for pid, _ in loads.values()}
    for address in ran_on:
        assert reports[address]["device"] == "cpu"
        assert any(tiny_text_model in key for key in reports[address]["backends"])


async def _set_gpus(dask_worker, amount):
    await dask_worker.set_resources(GPU=amount)


@pytest.mark.timeout(120)
def test_gpu_resource_keeps_model_and_embedding_on_gpu_workers(client, tiny_text_model):
    """Fake GPUs (there is none here): one worker declares a GPU resource. The documented recipe,
    ``dask.annotate(resources={"GPU": 1})`` around the call and the computation, must keep both
    the probe fit (which loads the model) and every embedding task on that worker."""
    gpu_worker = sorted(client.scheduler_info()["workers"])[0]
    client.run(_set_gpus, amount=1, workers=[gpu_worker])
    try:
        with distributed.get_task_stream(client=client) as stream:
            with dask.annotate(resources={"GPU": 1}):
                result = embed(_texts(60), TextEncoder(tiny_text_model, cache=None), partition_size=10).compute()
    finally:
        client.run(_set_gpus, amount=0, workers=[gpu_worker])
    model_tasks = [r for r in stream.data if _is_embedding_task(r) or "fit_on_first_item" in str(r["key"])]
    assert len(model_tasks) == 7  # 6 partitions and the probe fit
    assert {r["worker"] for r in model_tasks} == {gpu_worker}
    np.testing.assert_allclose(result, _reference(tiny_text_model, _texts(60)), atol=ATOL)


# ---------------------------------------------------------------------------------------------
# grid search with joblib's Dask backend


def _labelled(n):
    texts = _texts(n)
    y = np.array([int("good" in t.split()[0] or "film" in t.split()[0]) for t in texts])
    return texts, y


def _search(model, cache):
    pipe = make_pipeline(TextEncoder(model, cache=cache), LogisticRegression(max_iter=500))
    return GridSearchCV(pipe, {"logisticregression__C": [0.01, 1.0, 100.0]}, cv=3)


@pytest.mark.timeout(120)
def test_grid_search_on_dask_equals_single_process_and_embeds_each_text_once(
    client, tiny_text_model, tmp_path, rows_encoded
):
    texts, y = _labelled(60)
    reference = _search(tiny_text_model, cache=None).fit(texts, y)
    shared_cache = str(tmp_path / "shared_cache")

    # Warming embeds each unique text on exactly one worker: the partitions are disjoint.
    assert warm_cache(texts, TextEncoder(tiny_text_model, cache=shared_cache), partition_size=20) == 60
    assert rows_encoded() == 60

    search = _search(tiny_text_model, cache=shared_cache)
    with parallel_backend("dask"):
        search.fit(texts, y)
        scores = cross_val_score(search.best_estimator_, texts, y, cv=3)
    # 3 candidates x 3 folds plus 3 cross-validation fits ran on the workers without embedding anything.
    assert rows_encoded() == 60

    assert search.best_params_ == reference.best_params_
    for key in ("mean_test_score", "split0_test_score", "split1_test_score", "split2_test_score"):
        np.testing.assert_allclose(search.cv_results_[key], reference.cv_results_[key], atol=1e-6)
    expected_scores = cross_val_score(reference.best_estimator_, texts, y, cv=3)
    np.testing.assert_allclose(scores, expected_scores, atol=1e-6)


@pytest.mark.timeout(120)
def test_grid_search_cold_shared_cache_embeds_each_text_at_most_once_per_worker(
    client, tiny_text_model, tmp_path, rows_encoded
):
    texts, y = _labelled(60)
    search = _search(tiny_text_model, cache=str(tmp_path / "cold_cache"))
    with parallel_backend("dask"):
        search.fit(texts, y)
    # Without a cache: 3 candidates x 3 folds x 60 rows. With a cold shared cache, two workers can
    # embed the same text before either has stored it, but never the same worker twice.
    assert 60 <= rows_encoded() <= N_WORKERS * 60


# ---------------------------------------------------------------------------------------------
# fault tolerance: kept last, since it kills a worker for good


@pytest.mark.timeout(150)
def test_worker_killed_mid_job_finishes_without_reembedding(cluster, client, tiny_text_model, tmp_path, rows_encoded):
    n_parts, part_size = 12, 10
    texts = _texts(n_parts * part_size, prefix="kill ")
    encoder = TextEncoder(tiny_text_model, cache=str(tmp_path / "cache")).fit(texts[:1])
    # Slow partitions (0.5 s each) so that the kill lands mid-job.
    slow = db.from_sequence(texts, npartitions=n_parts).map_partitions(lambda part: (time.sleep(0.5), list(part))[1])
    pids = client.run(os.getpid)

    with distributed.get_task_stream(client=client) as stream:
        persisted = client.persist(embed(slow, encoder))
        futures = distributed.futures_of(persisted)
        deadline = time.monotonic() + 60
        victim = None
        while victim is None and time.monotonic() < deadline:
            held = {}
            for addresses in client.who_has(futures).values():
                for address in addresses:
                    held[address] = held.get(address, 0) + 1
            done = sum(held.values())
            candidates = [a for a, n in held.items() if n >= 2]
            if candidates and done <= n_parts - 4:
                victim = candidates[0]
            else:
                time.sleep(0.05)
        assert victim is not None, "the job finished or stalled before a worker could be killed mid-job"
        # Like a machine that dies: its nanny must not start a replacement.
        nanny = next(n for n in cluster[2].workers.values() if n.worker_address == victim)
        nanny.close_gracefully(reason="test: simulate a lost machine")
        os.kill(pids[victim], signal.SIGKILL)
        result = persisted.compute()

    np.testing.assert_allclose(result, _reference(tiny_text_model, texts), atol=ATOL)
    runs = sum(1 for r in stream.data if _is_embedding_task(r))
    # The victim's finished blocks were lost with it and computed again...
    assert runs >= n_parts + 2
    # ...from the cache: only the partition it was embedding when killed may have been embedded twice.
    assert len(texts) <= rows_encoded() <= len(texts) + part_size
    # It finished on the remaining worker alone.
    assert list(client.run(os.getpid).values()) == [pids[a] for a in pids if a != victim]
