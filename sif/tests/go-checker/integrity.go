// Signing and verification through the reference pkg/integrity, for the
// sif crate's signature interoperability tests.
package main

import (
	"bytes"
	"fmt"
	"os"
	"strconv"
	"time"

	"github.com/ProtonMail/go-crypto/openpgp"
	"github.com/ProtonMail/go-crypto/openpgp/clearsign"
	"github.com/sylabs/sif/v2/pkg/integrity"
	"github.com/sylabs/sif/v2/pkg/sif"
)

func readKeyRing(path string) openpgp.EntityList {
	f, err := os.Open(path)
	if err != nil {
		fail("keyring: %v", err)
	}
	defer f.Close()
	el, err := openpgp.ReadArmoredKeyRing(f)
	if err != nil {
		fail("keyring: %v", err)
	}
	return el
}

// signImage signs like the reference test images: deterministic objects and
// a fixed signature time.
func signImage(args []string) {
	if len(args) != 2 && len(args) != 4 {
		fail("usage: go-checker sign <image> <key.asc> [group|object N]")
	}
	el := readKeyRing(args[1])
	opts := []integrity.SignerOpt{
		integrity.OptSignWithEntity(el[0]),
		integrity.OptSignDeterministic(),
		integrity.OptSignWithTime(func() time.Time { return time.Unix(1593475316, 0) }),
	}
	if len(args) == 4 {
		n, err := strconv.ParseUint(args[3], 10, 32)
		if err != nil {
			fail("id: %v", err)
		}
		if args[2] == "group" {
			opts = append(opts, integrity.OptSignGroup(uint32(n)))
		} else {
			opts = append(opts, integrity.OptSignObjects(uint32(n)))
		}
	}
	f, err := sif.LoadContainerFromPath(args[0])
	if err != nil {
		fail("load: %v", err)
	}
	defer f.UnloadContainer()
	s, err := integrity.NewSigner(f, opts...)
	if err != nil {
		fail("signer: %v", err)
	}
	if err := s.Sign(); err != nil {
		fail("sign: %v", err)
	}
}

// verifyImage prints "ok" or the verification error; exit status 0 either
// way so that the caller can compare messages.
func verifyImage(args []string) {
	if len(args) != 2 && len(args) != 3 {
		fail("usage: go-checker verify <image> <keyring.asc> [legacy]")
	}
	f, err := sif.LoadContainerFromPath(args[0], sif.OptLoadWithFlag(os.O_RDONLY))
	if err != nil {
		fail("load: %v", err)
	}
	defer f.UnloadContainer()
	opts := []integrity.VerifierOpt{integrity.OptVerifyWithKeyRing(readKeyRing(args[1]))}
	if len(args) == 3 && args[2] == "legacy" {
		opts = append(opts, integrity.OptVerifyLegacyAll())
	}
	v, err := integrity.NewVerifier(f, opts...)
	if err == nil {
		err = v.Verify()
	}
	if err != nil {
		fmt.Println(err)
		return
	}
	fmt.Println("ok")
}

// printMetadata signs group N of a copy in memory and prints the clear-signed
// plaintext, i.e. the exact JSON document the reference library signs.
func printMetadata(args []string) {
	if len(args) != 3 {
		fail("usage: go-checker metadata <image> <key.asc> <group>")
	}
	data, err := os.ReadFile(args[0])
	if err != nil {
		fail("read: %v", err)
	}
	buf := sif.NewBuffer(data)
	f, err := sif.LoadContainer(buf)
	if err != nil {
		fail("load: %v", err)
	}
	n, err := strconv.ParseUint(args[2], 10, 32)
	if err != nil {
		fail("group: %v", err)
	}
	el := readKeyRing(args[1])
	s, err := integrity.NewSigner(f, integrity.OptSignWithEntity(el[0]), integrity.OptSignGroup(uint32(n)),
		integrity.OptSignDeterministic())
	if err != nil {
		fail("signer: %v", err)
	}
	if err := s.Sign(); err != nil {
		fail("sign: %v", err)
	}
	sigs, err := f.GetDescriptors(sif.WithDataType(sif.DataSignature))
	if err != nil || len(sigs) == 0 {
		fail("no signature: %v", err)
	}
	b, err := sigs[len(sigs)-1].GetData()
	if err != nil {
		fail("data: %v", err)
	}
	block, _ := clearsign.Decode(b)
	if block == nil {
		fail("not clear-signed")
	}
	os.Stdout.Write(bytes.TrimSuffix(block.Plaintext, []byte("\n")))
}
