"""lm-eval on the in-memory model: any registered task name, a local task folder or YAML file.

The model object goes straight into `HFLM(pretrained=model)`, so a masked model is evaluated
exactly as it sits in memory (no save and reload). Task names are checked against lm-eval's
index (built-in tasks plus every include path) before anything runs, so a typo costs seconds
and ends with a "did you mean", not a traceback deep inside lm-eval.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
from collections.abc import Iterator, Sequence

from ..errors import EvalError
from ..tasks import resolve_tasks, task_data_errors, task_manager_for

log = logging.getLogger(__name__)

EXTRAS = {"lm_eval": "lm-eval", "accelerate": "accelerate", "matplotlib": "matplotlib"}
BOOTSTRAP_ITERS = 1000  # one deterministic chunk (random.Random(0)) in lm-eval's bootstrap


def require_extras(*modules: str) -> None:
    """Fail with one line naming what to install when an optional evaluation package is missing."""
    for module in modules or tuple(EXTRAS):
        try:
            __import__(module)
        except ImportError:
            raise EvalError(
                f"Evaluation needs the package '{EXTRAS.get(module, module)}', which is not installed. "
                "Install the extras: pip install 'resect[eval]'."
            ) from None


def lm_eval_version() -> str:
    """The installed lm-eval version (part of every cache key)."""
    from importlib.metadata import version

    return version("lm-eval")


@contextlib.contextmanager
def scoped_env(name: str, value: str) -> Iterator[None]:
    """Set an environment variable for the duration of the block, then restore it (or its absence)."""
    saved = os.environ.get(name)
    os.environ[name] = value
    try:
        yield
    finally:
        if saved is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = saved


def _single_process_bootstrap() -> contextlib.AbstractContextManager:
    """lm-eval bootstraps perplexity stderrs in a process pool unless DISABLE_MULTIPROC is set;
    forking a process that holds a model wastes memory, and one process gives the same numbers."""
    return scoped_env("DISABLE_MULTIPROC", "1")


@contextlib.contextmanager
def _quiet_git_probe() -> Iterator[None]:
    """lm-eval records the git commit of the working directory by running `git describe` with its
    stderr left open: outside a repository every evaluation printed git's "fatal: not a git
    repository". The same probe with git's stderr discarded (None outside a repository)."""
    import subprocess

    import lm_eval.evaluator as evaluator

    def git_hash() -> str | None:
        try:
            out = subprocess.run(["git", "describe", "--always"], capture_output=True, text=True, timeout=10)
        except (OSError, subprocess.SubprocessError):
            return None
        return (out.stdout.strip() or None) if out.returncode == 0 else None

    saved = evaluator.get_git_commit_hash
    evaluator.get_git_commit_hash = git_hash
    try:
        yield
    finally:
        evaluator.get_git_commit_hash = saved


def check_run_options(limit: int | float | None, batch_size: int, seed: int | None = None) -> None:
    """A positive limit (count, or fraction below 1), batch size and seed in range."""
    from ..checks import check_numbers

    check_numbers({"limit": limit, "batch_size": batch_size, "seed": seed})


def normalize_limit(limit: int | float | None) -> int | float | None:
    """One spelling per request: a whole count as an int (10.0 and 10 are the same request, and the
    same baseline cache entry); a fraction below 1 stays a fraction."""
    if limit is None or limit < 1:
        return limit
    return int(limit) if float(limit).is_integer() else limit


def evaluate(
    model,
    tokenizer,
    tasks: list[str],
    *,
    include_path: str | os.PathLike | Sequence | None = None,
    limit: int | float | None = None,
    batch_size: int = 8,
    seed: int = 0,
    progress=None,
) -> dict:
    """Run lm-eval on an in-memory model; returns lm-eval's results dict (JSON-serialisable).
    `progress(done, total)` counts lm-eval's requests of each kind."""
    require_extras("lm_eval", "accelerate")
    check_run_options(limit, batch_size)
    limit = normalize_limit(limit)
    names, includes = resolve_tasks(tasks, include_path)
    import lm_eval

    log.info("lm-eval %s on %s (limit %s)", lm_eval_version(), ", ".join(names), limit)
    with _single_process_bootstrap(), _quiet_git_probe(), task_data_errors():
        lm = _metered_lm(model, tokenizer, batch_size, progress)
        results = lm_eval.simple_evaluate(
            model=lm,
            tasks=names,
            task_manager=task_manager_for(names, includes),
            limit=limit,
            bootstrap_iters=BOOTSTRAP_ITERS,
            log_samples=True,  # per-document log-likelihoods give the perplexity stderrs lm-eval leaves N/A
            random_seed=seed,
            numpy_random_seed=seed,
            torch_random_seed=seed,
            fewshot_random_seed=seed,
        )
    if results is None:
        raise EvalError("lm-eval returned no results (a non-zero rank of a distributed run). Run on one process.")
    samples = results.pop("samples", {})
    for task, docs in samples.items():
        fill_perplexity_stderrs(results["results"].get(task, {}), docs)
    from .paired import doc_scores

    results["per_doc"] = doc_scores(samples)  # per question: what paired comparisons read
    return json.loads(json.dumps(results, default=str))


REQUESTS_PER_UPDATE = 32  # batches of lm-eval requests between progress updates


def _metered_lm(model, tokenizer, batch_size: int, progress):
    """lm-eval's HFLM over the in-memory model; with `progress`, each kind of request runs in
    chunks so that the count of finished requests can be shown."""
    from lm_eval.models.huggingface import HFLM

    class MeteredHFLM(HFLM):
        def _chunked(self, method, requests, disable_tqdm: bool = False):
            step = max(1, batch_size * REQUESTS_PER_UPDATE)
            out = []
            for start in range(0, len(requests), step):
                out += method(requests[start : start + step], disable_tqdm=True)
                progress(len(out), len(requests))
            return out

        def loglikelihood(self, requests, disable_tqdm: bool = False):
            return self._chunked(super().loglikelihood, requests)

        def loglikelihood_rolling(self, requests, disable_tqdm: bool = False):
            return self._chunked(super().loglikelihood_rolling, requests)

        def generate_until(self, requests, disable_tqdm: bool = False):
            return self._chunked(super().generate_until, requests)

    return (HFLM if progress is None else MeteredHFLM)(pretrained=model, tokenizer=tokenizer, batch_size=batch_size)


RATIO_METRICS = {"word_perplexity": "exp", "byte_perplexity": "exp", "bits_per_byte": "log2"}


def fill_perplexity_stderrs(entry: dict, docs: list[dict]) -> None:
    """Standard errors of weighted perplexities (lm-eval reports N/A), by the delta method over documents.

    With per-document log-likelihood l_i and weight w_i (words or bytes), the metric is a
    function of R = -sum(l) / sum(w): exp(R) for perplexities, R / ln 2 for bits per byte.
    The ratio estimator's variance is var(-l_i - R w_i) / (n mean(w)^2).
    """
    for metric, kind in RATIO_METRICS.items():
        pairs = [d[metric] for d in docs if isinstance(d.get(metric), (list, tuple)) and len(d[metric]) == 2]
        key = next((k for k in entry if k.split(",")[0] == metric), None)
        if key is None or len(pairs) < 2 or isinstance(entry.get(_stderr_key(key)), (int, float)):
            continue
        ll = [float(p[0]) for p in pairs]
        w = [float(p[1]) for p in pairs]
        n, ratio = len(pairs), -sum(ll) / sum(w)
        resid = [-li - ratio * wi for li, wi in zip(ll, w)]
        mean_w = sum(w) / n
        se_ratio = math.sqrt(sum(r * r for r in resid) / (n - 1) / n) / mean_w
        entry[_stderr_key(key)] = math.exp(ratio) * se_ratio if kind == "exp" else se_ratio / math.log(2)


def _stderr_key(key: str) -> str:
    name, _, filt = key.partition(",")
    return f"{name}_stderr,{filt}"
