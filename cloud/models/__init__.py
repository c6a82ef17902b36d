from cloud.models.classifier import Classifier

__all__ = ["Classifier"]
