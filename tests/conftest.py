pytest_plugins = [
    "tests.fixtures.services",
    "tests.fixtures.postgres",
    "tests.fixtures.kafka",
    "tests.fixtures.ingress",
    "tests.fixtures.worker",
    "tests.fixtures.stripe",
    "tests.fixtures.registry",
    "tests.fixtures.crm",
    "tests.fixtures.mailboxes",
]
