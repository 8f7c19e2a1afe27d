"""Stage 2, capture: the fitting sequences (samples plus the model's own answers and decoys after neutral
prompts) run once through the model; ``Activations`` keep every token's residual and MLP input at the
candidate layers (stored on disk by content hash). Generation with a result cache lives here too, because
the model's own answers are captured before anything is fitted."""
