"""chinwag.dlp: data-loss-prevention scanner (issue 8). So far: the document DSL (`dsl`), the label set and
exact validators (`labels`), and the document labelling policy (`policy`)."""

from chinwag.dlp.dsl import Attachment, Document, DocumentError, Serialized, serialize
from chinwag.dlp.labels import BIO_TAGS, LABELS, Span
from chinwag.dlp.policy import DocLabels, document_labels

__all__ = [
    "Attachment",
    "BIO_TAGS",
    "DocLabels",
    "Document",
    "DocumentError",
    "LABELS",
    "Serialized",
    "Span",
    "document_labels",
    "serialize",
]
