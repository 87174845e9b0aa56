package identity

// Unexported limits the external tests check against.
const (
	StagedSuffix = stagedSuffix
	ClockSkew    = clockSkew
	SecretLen    = secretLen
)
