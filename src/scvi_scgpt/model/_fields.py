"""AnnData fields specific to SCGPT."""

from __future__ import annotations

from anndata import AnnData
from scvi.data.fields import LayerField


class GeneExpressionField(LayerField):
    """Expression matrix whose gene set may differ between AnnData objects.

    scGPT reads genes by name through its vocabulary, so unlike scvi-tools' ``LayerField``
    a new AnnData does not need the same number or order of genes as the one the model was
    set up with.
    """

    def transfer_field(self, state_registry: dict, adata_target: AnnData, **kwargs) -> dict:
        """Register ``adata_target`` with this field's settings, any gene set allowed."""
        self.validate_field(adata_target)
        return self.register_field(adata_target)
