"""Device identities and what enforces them: the fleet CA, enrolment, the broker's ACL, revocation."""
