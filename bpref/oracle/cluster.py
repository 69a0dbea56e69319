"""A search spread over a Dask cluster: the candidate's calls run on the cluster's workers.

``check(candidate, cluster="tcp://host:8786")`` (``bpref check --dask tcp://host:8786``) runs the
same search, shrinking and diagnosis as ``--workers N``: bpref draws every case and computes
every truth in this process, in the same order, and only the candidate's calls go out, as many
at a time as the cluster has worker threads. The results come back in order, and the first
failing case is the first in that order, so a seed gives the same verdict and the same minimal
case whatever the number of workers (``tests/test_cluster.py``). ``cluster`` may also be a
``dask.distributed.Client`` or ``LocalCluster`` the caller made; bpref closes only what it opens.

``ClusterPool`` has the interface of ``isolation.Isolated`` (``start``, ``info``, ``map``,
``fresh``, ``close``). Each worker loads the candidate once (named, "module:function", or
pickled) and keeps it; a call that raises is the candidate's exception, a call that does not
return within the timeout is a timeout (a thread cannot be stopped: workers with a nanny are
restarted before the next call, see ``ClusterPool.fresh``), and a worker that dies is a crash.
What the candidate writes reaches the report where its worker is a process of its own that runs
one task at a time (``dask worker --nthreads 1``, ``LocalCluster(processes=True,
threads_per_worker=1)``); elsewhere it stays in the workers' logs, as redirecting a process's
descriptors 1 and 2 would catch the other tasks' output too. Dask is an optional extra:
``pip install 'bpref[dask]'``.
"""

from __future__ import annotations

import hashlib
import os
import pickle
import time

from bpref.oracle import isolation as _isolation

_LOADED: dict = {}
"""On a worker: the candidates loaded so far, by the digest of their target."""


def _digest(target) -> str:
  return hashlib.sha256(pickle.dumps(target)).hexdigest()


def _load(target, digest: str):
  """On a worker: the candidate of ``target`` (``isolation.Isolated``'s forms), loaded once."""
  if digest not in _LOADED:
    if isinstance(target, tuple) and target[0] == "named":
      _LOADED[digest] = _isolation.load_candidate(*target[1:])
    elif isinstance(target, tuple) and target[0] == "made":
      _LOADED[digest] = pickle.loads(target[1])()
    else:
      _LOADED[digest] = pickle.loads(target)
  return _LOADED[digest]


def _info(target, digest: str):
  """On a worker: what ``Isolated`` says of a loaded candidate (whether an op has a forward)."""
  candidate = _load(target, digest)
  if isinstance(target, tuple) and target[0] == "made":
    return {"forward": getattr(candidate, "forward", None) is not None}
  return None


def _call(target, digest: str, message, home: int) -> _isolation.Outcome:
  """On a worker: one call of the candidate, as ``isolation``'s subprocess makes it, with what
  it writes where the worker is alone in its process (``_alone``)."""
  candidate = _load(target, digest)
  if not _alone(home):
    outcome = _isolation.answer(candidate, message)
  else:
    with _isolation.Captured() as out:
      outcome = _isolation.answer(candidate, message)
    outcome = outcome._replace(stdout=out.stdout, stderr=out.stderr)
  return outcome._replace(result=_isolation.plain(outcome.result))


def _alone(home: int) -> bool:
  """On a worker: whether it runs in a process apart from the search's (pid ``home``) and one
  task at a time, so that redirecting descriptors 1 and 2 catches this call's output alone."""
  if os.getpid() == home:
    return False
  try:
    from dask.distributed import get_worker

    return get_worker().state.nthreads == 1
  except Exception:  # not on a worker, or a Dask without this attribute: leave the output be
    return False


def _client(cluster):
  try:
    from dask import distributed
  except ImportError:
    raise ValueError("a Dask cluster needs dask.distributed: pip install 'bpref[dask]'") from None
  if isinstance(cluster, distributed.Client):
    return cluster, False
  if isinstance(cluster, str) or hasattr(cluster, "scheduler_address"):
    try:
      return distributed.Client(cluster, set_as_default=False), True
    except OSError as exc:  # refused, or timed out: no scheduler answers there
      where = cluster if isinstance(cluster, str) else cluster.scheduler_address
      raise ValueError(f"the Dask scheduler at {where} cannot be reached: {exc}") from None
  raise TypeError(f"cluster must be a scheduler address such as 'tcp://host:8786', a "
                  f"dask.distributed Client or a cluster object; got {type(cluster).__name__}")


class ClusterPool:
  """The candidate's calls on a Dask cluster, with ``isolation.Isolated``'s interface.

  Args:
    target: the candidate as ``Isolated`` takes it: pickled bytes, ("named", kind, ref,
      reduction) or ("made", a pickled factory).
    cluster: a scheduler address, a ``dask.distributed.Client`` or a cluster object.
    timeout: seconds one call may take.
  """

  def __init__(self, target, cluster, timeout: float = 60.0):
    self._target, self._digest, self._timeout = target, _digest(target), timeout
    self._client, self._owned = _client(cluster)
    threads = self._client.nthreads()
    if not threads:
      self.close()
      raise ValueError(f"the Dask cluster at {self.address} has no workers")
    self.workers = sum(threads.values())
    self.info, self._loaded = None, False

  @property
  def address(self) -> str:
    return self._client.scheduler.address

  def start(self):
    """The candidate loaded on a worker; ValueError when loading raised there."""
    future = self._client.submit(_info, self._target, self._digest, pure=False)
    try:
      self.info = future.result(timeout=max(120.0, self._timeout))
    except Exception as exc:
      raise ValueError(f"the candidate could not be loaded on the cluster: "
                       f"{type(exc).__name__}: {exc}") from None
    self._loaded = True
    return self.info

  def map(self, inputs_list) -> list:
    """One ``Outcome`` per call, in order; the cluster runs up to ``workers`` side by side, so
    the k-th call (from 0) is given until ``timeout`` times (k // workers + 1) from now."""
    if not self._loaded:
      self.start()
    start, now = time.perf_counter(), time.monotonic()
    futures = [self._client.submit(_call, self._target, self._digest,
                                   _isolation.plain_message(item), os.getpid(), pure=False)
               for item in inputs_list]
    results, hung = [], False
    for k, future in enumerate(futures):
      deadline = now + self._timeout * (k // self.workers + 1)
      try:
        results.append(future.result(timeout=max(0.0, deadline - time.monotonic())))
      except TimeoutError:
        future.cancel()
        hung = True
        results.append(_isolation.Outcome(
            "timeout", error=f"the call did not return within {self._timeout:g} s on the cluster",
            seconds=self._timeout))
      except Exception as exc:  # the worker died (KilledWorker) or the result could not return
        results.append(_isolation.Outcome(
            "crash", error=f"the call ended its Dask worker: {type(exc).__name__}: {exc}",
            seconds=time.perf_counter() - start))
    for outcome in results:
      _isolation.record(outcome.stdout, outcome.stderr)
    if hung:
      self.fresh()
    return results

  def fresh(self) -> None:
    """Every worker restarted where the cluster can restart it (a worker with a nanny, as
    ``dask worker`` and ``LocalCluster(processes=True)`` start them): the next call then runs
    where no earlier call ran. Workers without a nanny (threads of a process) are left as they
    are: a call that hung there keeps its thread until it returns."""
    workers = self._client.scheduler_info()["workers"].values()
    if all(w.get("nanny") for w in workers):
      self._client.restart()

  def close(self) -> None:
    if self._owned:
      self._client.close()

  def __enter__(self):
    return self

  def __exit__(self, *exc):
    self.close()
