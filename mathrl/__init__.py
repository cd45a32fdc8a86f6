"""mathrl: the library behind train.py, eval.py and plot.py (the scripts at the top of the repository).

    engine.py        rollouts with Hugging Face generate          engine_vllm.py  the same on a colocated vLLM engine
    verify.py        answer extraction and equivalence             templates.py    the prompt templates (plain data)
    distributed.py   torch.distributed helpers for torchrun        outputs.py      run folder: metrics, samples, checkpoints
    tiny.py          the tiny CPU world (tokenizer, model, task)   kernels/        fused log-prob + entropy (Triton)
    grading.py       verify.grade over worker processes            data.py         the data readers the scripts share
    dynamic.py       dynamic sampling: dead groups, refill draws   batching.py     micro-batches of a mini-batch (memory)

One package with a name of its own, so that no module here can shadow a library: `kernels` is also Hugging Face's
kernel hub (which transformers imports), `distributed` is Dask's scheduler. Importing the package imports nothing.
"""


class UserError(Exception):
    """Something the user gave is wrong or missing: a flag, a file, a data row, a package, a device. train.py, eval.py
    and plot.py print these as one line, `error: ...`; every other exception (a bug, a shape error in a forked loss,
    CUDA out of memory) keeps its traceback. Each kind below is also the built-in error it replaces."""


class BadValue(UserError, ValueError):
    """A flag's value or a data row that cannot be used."""


class MissingFile(UserError, FileNotFoundError):
    """A file or folder named by a flag is not there."""


class CannotRun(UserError, RuntimeError):
    """The run cannot start here: a package, a model or a device is missing."""
