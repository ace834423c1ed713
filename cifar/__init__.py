"""CIFAR-10 counterpart of the feature-purification simulations (Allen-Zhu & Li, FOCS 2021).

Clean training, adversarial training (from scratch, fine-tuned from the clean weights in
full or through low-rank updates), attacks and an AutoAttack-style evaluation, and the
per-neuron purification measures w_i = beta_i w'_i + v_i.

    python -m cifar run --preset smoke --out /tmp/cifar_smoke      # CPU, < 1 min
    python -m cifar run --preset gpu --out runs/gpu                 # one H100, ~10 min (estimate)
    python -m cifar prepare                                        # verify, decode, cache the data

One concept per module: data, augment, models, runtime, lowrank, attacks, train, evaluate,
measures, figures, pipeline, cli; testing holds fake data sets for the tests.
"""

__version__ = "0.1.0"
