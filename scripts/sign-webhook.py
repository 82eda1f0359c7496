"""Signs a webhook the way Slack and Twilio do, with their own libraries, for the spine tests.

    python sign-webhook.py slack SECRET TIMESTAMP BODY   -> the X-Slack-Signature value
    python sign-webhook.py twilio AUTH_TOKEN URL FORM    -> the X-Twilio-Signature value

FORM is the urlencoded body; a key given more than once is a list, as Twilio posts it.
"""

import sys
from urllib.parse import parse_qsl


def main(argv):
    provider = argv[1]
    if provider == "slack":
        from slack_sdk.signature import SignatureVerifier

        secret, timestamp, body = argv[2:5]
        print(SignatureVerifier(secret).generate_signature(timestamp=timestamp, body=body))
    elif provider == "twilio":
        from twilio.request_validator import RequestValidator

        token, url, form = argv[2:5]
        params = {}
        for key, value in parse_qsl(form, keep_blank_values=True):
            params.setdefault(key, []).append(value)
        params = {k: v[0] if len(v) == 1 else v for k, v in params.items()}
        print(RequestValidator(token).compute_signature(url, params))
    else:
        sys.exit(f"unknown provider {provider}")


if __name__ == "__main__":
    main(sys.argv)
