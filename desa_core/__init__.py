"""DESA Explorer core library: survey data, the DESA model, training, evaluation and FAISS indexes."""
__version__ = "0.1.0"
