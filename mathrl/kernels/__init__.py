"""Triton kernels, each beside its PyTorch reference.

    from mathrl.kernels import logprob_entropy, logprob_entropy_from_hidden
    logp, entropy = logprob_entropy(logits, targets, temperature=1.0, vocab_limit=None)           # (*, V) -> (*)
    logp, entropy = logprob_entropy_from_hidden(hidden, lm_head.weight, targets, temperature=1.0)  # chunked LM head

CUDA tensors use the Triton kernels; CPU tensors use the PyTorch reference unless use_triton=True (which on a
CPU needs TRITON_INTERPRET=1 in the environment before Triton is first imported).
"""

from .logprob_entropy import logprob_entropy, logprob_entropy_ref
from .logprob_entropy_hidden import logprob_entropy_from_hidden, logprob_entropy_from_hidden_ref

__all__ = ["logprob_entropy", "logprob_entropy_ref", "logprob_entropy_from_hidden", "logprob_entropy_from_hidden_ref"]
