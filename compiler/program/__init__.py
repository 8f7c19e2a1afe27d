"""Stage 4, program: every candidate strategy gets an anchor (``anchors``: a gate neuron fitted on where the
strategy should fire), is measured for applicability, and the program search (``search``) chooses which
strategies and anchors to ship; ``steering_program`` holds the chosen ``Program`` and lowers it to adapter
neurons."""
