"""What is measured: the images (digits or a user's ImageFolder), their preprocessing, the model
(built, loaded from a checkpoint or trained) and the GRU of the dynamic-INT8 study."""
