"""The commands built on bpref: ``verify`` (bpref against its witnesses), ``bench`` (bpref
against ``jax.grad``, and the checkers) and ``train`` (an MLP trained with bpref's gradients)."""
