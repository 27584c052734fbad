"""Class priors used as the reference point for every score.

The RFCx test prior (share of test clips containing each species) comes from the hosts' paper and was
used by most top teams; ../shared/README.md lists it. The synthetic soundscapes draw species presence from
it, and the prior-only baseline (the same scores for every clip) is what every stage must beat.
"""

RFCX_TEST_PRIOR = (
    0.113, 0.204, 0.044, 0.923, 0.053, 0.041, 0.003, 0.213, 0.044, 0.023, 0.026, 0.149,
    0.255, 0.014, 0.123, 0.222, 0.046, 0.006, 0.474, 0.004, 0.017, 0.018, 0.023, 0.072,
)
