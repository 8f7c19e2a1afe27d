"""Stage 3, strategies: the algorithm library (``algorithms``: mean difference, PCA, probes, LDA, sparse,
directional ablation, rotation) fits a ``Proposal`` per algorithm and layer from the capture; ``library``
ranks layers and calibrates each proposal's strength on val within a drift budget (``StrategyRow``);
``scoring`` holds the teacher-forced measures both use."""
