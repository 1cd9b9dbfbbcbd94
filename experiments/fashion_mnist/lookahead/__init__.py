"""Fashion-MNIST studies (run as modules: python -m experiments.fashion_mnist....)."""
