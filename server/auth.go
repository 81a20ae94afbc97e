package server

import (
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/golang-jwt/jwt/v5"

	"github.com/redpush/redpush/redisq"
)

// Auth verifies the signed identity a client presents as ?token=<JWT>: the
// user id is the token's "sub", never a query parameter, so a token for user
// A cannot read user B. A nil *Auth keeps the original's behaviour: the
// client names its user in ?user_id= and is believed.
type Auth struct {
	key     any
	methods []string
	leeway  time.Duration // for clock skew, on exp and nbf
}

// defaultLeeway is the clock skew forgiven on a token's exp and nbf.
const defaultLeeway = 5 * time.Second

// NewHMACAuth verifies HS256 tokens signed with secret.
func NewHMACAuth(secret []byte) (*Auth, error) {
	if len(secret) < 16 {
		return nil, fmt.Errorf("%w: the JWT secret must be at least 16 bytes", ErrBadConfig)
	}
	return &Auth{key: secret, methods: []string{"HS256"}, leeway: defaultLeeway}, nil
}

// NewPublicKeyAuth verifies RS256 (RSA key) or ES256 (ECDSA P-256 key)
// tokens against a PEM-encoded public key.
func NewPublicKeyAuth(pem []byte) (*Auth, error) {
	if k, err := jwt.ParseRSAPublicKeyFromPEM(pem); err == nil {
		return &Auth{key: k, methods: []string{"RS256"}, leeway: defaultLeeway}, nil
	}
	if k, err := jwt.ParseECPublicKeyFromPEM(pem); err == nil {
		return &Auth{key: k, methods: []string{"ES256"}, leeway: defaultLeeway}, nil
	}
	return nil, fmt.Errorf("%w: the public key is neither an RSA nor an ECDSA PEM key", ErrBadConfig)
}

// Errors of token checks; each is the one-line body of a 401.
var (
	errTokenMissing = errors.New("token required: connect with ?token=<JWT>")
	errTokenInvalid = errors.New("invalid token")
	errTokenSubject = errors.New("token subject (sub) must be 1-128 characters of [A-Za-z0-9_.:-]")
)

// User returns the user id of a valid token. Expiry is required and, like
// not-before, checked with 5 s of leeway for clock skew; "alg: none" and any
// algorithm but the configured one are refused.
func (a *Auth) User(token string) (string, error) {
	user, _, err := a.verify(token)
	return user, err
}

// verify is User that also says until when the token is valid: its exp
// plus the leeway, the moment a handshake with it would be refused. A
// connection opened with it is closed then ("token expired").
func (a *Auth) verify(token string) (user string, until time.Time, err error) {
	if token == "" {
		return "", time.Time{}, errTokenMissing
	}
	var claims jwt.RegisteredClaims
	_, err = jwt.ParseWithClaims(token, &claims, func(*jwt.Token) (any, error) { return a.key, nil },
		jwt.WithValidMethods(a.methods), jwt.WithExpirationRequired(), jwt.WithLeeway(a.leeway))
	switch {
	case errors.Is(err, jwt.ErrTokenExpired):
		return "", time.Time{}, fmt.Errorf("%w: expired", errTokenInvalid)
	case errors.Is(err, jwt.ErrTokenNotValidYet):
		return "", time.Time{}, fmt.Errorf("%w: not valid yet", errTokenInvalid)
	case err != nil:
		return "", time.Time{}, fmt.Errorf("%w: %s", errTokenInvalid, strings.ReplaceAll(err.Error(), "\n", " "))
	}
	if !redisq.ValidID(claims.Subject) {
		return "", time.Time{}, errTokenSubject
	}
	return claims.Subject, claims.ExpiresAt.Add(a.leeway), nil
}

// Sign issues an HS256 token for user valid for ttl: the `redpush token`
// command, for tests and demos. Production tokens come from the login.
func Sign(secret []byte, user string, ttl time.Duration) (string, error) {
	if !redisq.ValidID(user) {
		return "", errBadUserID
	}
	now := time.Now()
	return jwt.NewWithClaims(jwt.SigningMethodHS256, jwt.RegisteredClaims{
		Subject:   user,
		IssuedAt:  jwt.NewNumericDate(now),
		ExpiresAt: jwt.NewNumericDate(now.Add(ttl)),
	}).SignedString(secret)
}
