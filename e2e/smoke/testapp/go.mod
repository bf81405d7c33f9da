module sigil.test/e2e/testapp

go 1.25.0
