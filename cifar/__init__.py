"""CIFAR-10 counterpart of the feature-purification simulations (Allen-Zhu & Li, FOCS 2021).

Clean training, adversarial training (from scratch, fine-tuned from the clean weights in
full or through low-rank updates), attacks and an AutoAttack-style evaluation, and the
per-neuron purification measures w_i = beta_i w'_i + v_i.

    python -m cifar run --preset smoke --out runs/cifar_smoke      # CPU, < 1 min
    python -m cifar run --preset gpu --out runs/cifar_gpu          # one GPU (see `python -m cifar presets`)
    python -m cifar prepare                                        # verify, decode, cache the data

One concept per module: config and presets (free of torch, so the command line checks its
parameters before importing it), data, augment, models, runtime, lowrank, attacks, train,
evaluate, measures, figures, pipeline, cli; testing holds fake data sets for the tests.
"""

__version__ = "0.1.0"
