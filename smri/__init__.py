"""smri: CNN-LSTM classification of structural MRI, from NIfTI folders to a trained model."""

__version__ = "0.1.0"
