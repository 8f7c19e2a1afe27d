"""The kinds of steering an adapter holds: names shared by the format, the kernel and the model card."""

NEURON = "neuron"      # a gated steering neuron: fires where its anchor says, bakes by concatenation
ADDITIVE = "additive"  # an always-on vector added to the MLP output (static steering)
ROTATION = "rotation"  # angle-preserving steering at a decoder layer's output (adapter only)
ABLATION = "ablation"  # directional ablation on every residual write (adapter-wide; bakes by orthogonalisation)
LAYER_KINDS = (NEURON, ADDITIVE, ROTATION)  # live under a layer in the config
GLOBAL_KINDS = (ABLATION,)                  # live in the config's "global" list, layer None
KINDS = LAYER_KINDS + GLOBAL_KINDS
