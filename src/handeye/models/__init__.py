"""The networks: the ViT backbone (vit), the masked autoencoder around it (mae), and the one encoder
protocol, ``embed(images) -> (N, D)`` with its preprocessing, that dedup, features and RL all use (encoders).
"""
