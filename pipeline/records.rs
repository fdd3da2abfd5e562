//! Records: the nouns of the pipeline (placeholder, filled by the consent-gate issue).
