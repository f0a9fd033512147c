"""Pure tensor functions: no randomness, no state. Every random op in keepmix is
``sample_params`` (in the module classes) followed by one of these functions."""
