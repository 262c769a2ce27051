package ocsp

import (
	"bytes"
	"crypto"
	"crypto/x509"
	"encoding/asn1"
	"errors"
	"fmt"
	"math/big"

	"golang.org/x/crypto/cryptobyte"
	cbasn1 "golang.org/x/crypto/cryptobyte/asn1"
)

// hashes maps the OIDs of the hash algorithms a CertID may use (RFC 6960
// §4.1.1) to the hash.
var hashes = []struct {
	oid  asn1.ObjectIdentifier
	hash crypto.Hash
}{
	{asn1.ObjectIdentifier{1, 3, 14, 3, 2, 26}, crypto.SHA1},
	{asn1.ObjectIdentifier{2, 16, 840, 1, 101, 3, 4, 2, 1}, crypto.SHA256},
	{asn1.ObjectIdentifier{2, 16, 840, 1, 101, 3, 4, 2, 2}, crypto.SHA384},
	{asn1.ObjectIdentifier{2, 16, 840, 1, 101, 3, 4, 2, 3}, crypto.SHA512},
}

// errMalformed is a response whose structure is not an OCSP response's.
var errMalformed = errors.New("malformed response")

// checkCertID checks that the single response for leaf's serial in der
// names issuer: its CertID's issuer name hash and issuer key hash are
// those of issuer. x/crypto matches the serial alone (golang/go#81396),
// and a serial is unique per issuer only.
func checkCertID(der []byte, leaf, issuer *x509.Certificate) error {
	singles, err := singleResponses(der)
	if err != nil {
		return err
	}
	for _, id := range singles {
		if id.serial.Cmp(leaf.SerialNumber) != 0 {
			continue
		}
		h, ok := hashOf(id.alg)
		if !ok || !h.Available() {
			return fmt.Errorf("CertID hash algorithm %v not supported", id.alg)
		}
		keyHash, err := issuerKeyHash(issuer, h)
		if err != nil {
			return err
		}
		nh := h.New()
		nh.Write(issuer.RawSubject)
		if !bytes.Equal(id.nameHash, nh.Sum(nil)) || !bytes.Equal(id.keyHash, keyHash) {
			return errors.New("the response's CertID names another issuer")
		}
		return nil
	}
	return fmt.Errorf("no response for serial %v", leaf.SerialNumber)
}

type certID struct {
	alg               asn1.ObjectIdentifier
	nameHash, keyHash []byte
	serial            *big.Int
}

func hashOf(oid asn1.ObjectIdentifier) (crypto.Hash, bool) {
	for _, h := range hashes {
		if h.oid.Equal(oid) {
			return h.hash, true
		}
	}
	return 0, false
}

// singleResponses reads the CertIDs of a response's single responses:
// OCSPResponse → responseBytes → BasicOCSPResponse → tbsResponseData →
// responses (RFC 6960 §4.2.1).
func singleResponses(der []byte) ([]certID, error) {
	in := cryptobyte.String(der)
	var resp, respBytes, rb, basicDER, basic, tbs, responses cryptobyte.String
	if !in.ReadASN1(&resp, cbasn1.SEQUENCE) ||
		!resp.SkipASN1(cbasn1.ENUM) ||
		!resp.ReadASN1(&respBytes, cbasn1.Tag(0).Constructed().ContextSpecific()) ||
		!respBytes.ReadASN1(&rb, cbasn1.SEQUENCE) ||
		!rb.SkipASN1(cbasn1.OBJECT_IDENTIFIER) ||
		!rb.ReadASN1(&basicDER, cbasn1.OCTET_STRING) ||
		!basicDER.ReadASN1(&basic, cbasn1.SEQUENCE) ||
		!basic.ReadASN1(&tbs, cbasn1.SEQUENCE) ||
		!tbs.SkipOptionalASN1(cbasn1.Tag(0).Constructed().ContextSpecific()) ||
		!tbs.SkipASN1(cbasn1.Tag(1).Constructed().ContextSpecific()) && !tbs.SkipASN1(cbasn1.Tag(2).Constructed().ContextSpecific()) ||
		!tbs.SkipASN1(cbasn1.GeneralizedTime) ||
		!tbs.ReadASN1(&responses, cbasn1.SEQUENCE) {
		return nil, errMalformed
	}
	var out []certID
	for !responses.Empty() {
		var single, idDER, alg cryptobyte.String
		var id certID
		id.serial = new(big.Int)
		if !responses.ReadASN1(&single, cbasn1.SEQUENCE) ||
			!single.ReadASN1(&idDER, cbasn1.SEQUENCE) ||
			!idDER.ReadASN1(&alg, cbasn1.SEQUENCE) ||
			!alg.ReadASN1ObjectIdentifier(&id.alg) ||
			!idDER.ReadASN1Bytes(&id.nameHash, cbasn1.OCTET_STRING) ||
			!idDER.ReadASN1Bytes(&id.keyHash, cbasn1.OCTET_STRING) ||
			!idDER.ReadASN1Integer(id.serial) {
			return nil, errMalformed
		}
		out = append(out, id)
	}
	return out, nil
}

// issuerKeyHash hashes the issuer's public key, the BIT STRING of its
// SubjectPublicKeyInfo without tag and length (RFC 6960 §4.1.1).
func issuerKeyHash(issuer *x509.Certificate, h crypto.Hash) ([]byte, error) {
	spki := cryptobyte.String(issuer.RawSubjectPublicKeyInfo)
	var inner cryptobyte.String
	var key asn1.BitString
	if !spki.ReadASN1(&inner, cbasn1.SEQUENCE) || !inner.SkipASN1(cbasn1.SEQUENCE) || !inner.ReadASN1BitString(&key) {
		return nil, errors.New("issuer's public key does not parse")
	}
	hh := h.New()
	hh.Write(key.RightAlign())
	return hh.Sum(nil), nil
}
