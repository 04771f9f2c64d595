"""Pure tensor operations shared by models, objectives and inference."""
