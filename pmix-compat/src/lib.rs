//! PMIx / PMI2 passthrough (issue 5).
