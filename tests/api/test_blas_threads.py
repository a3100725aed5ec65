"""NN_API_BLAS_THREADS: an API process computes each request on one BLAS thread (concurrent requests then use
the cores side by side instead of queueing for one BLAS thread pool), and gives the default back at shutdown."""

from threadpoolctl import threadpool_info

from tests.api.conftest import running_app


def _blas_threads() -> set[int]:
    return {lib["num_threads"] for lib in threadpool_info() if lib["user_api"] == "blas"}


def test_requests_use_one_blas_thread_while_the_app_runs(tmp_path):
    before = _blas_threads()
    with running_app(tmp_path / "a", workers=0):
        assert _blas_threads() == {1}
    assert _blas_threads() == before
    with running_app(tmp_path / "b", workers=0, api_blas_threads=0):  # 0: the library's default
        assert _blas_threads() == before
