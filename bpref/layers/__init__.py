"""The layers of a transformer block, each a forward step and its handwritten backward step.

One module per layer, each read the way ``bpref.backprop`` reads: the forward step returns its
output and what the backward step needs (a cache), the backward step returns the gradients of
the loss with respect to the inputs and the parameters, from dC/d(output). Rows are positions:
x has shape (..., C), any leading axes (B, T) batched alike. The derivations and their
equation tags are in proofs/layers.md (attention's in proofs/attention.md); no JAX autodiff is used.
"""
