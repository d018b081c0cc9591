// @ts-check
import js from '@eslint/js';
import prettier from 'eslint-config-prettier';
import tseslint from 'typescript-eslint';

export default tseslint.config(
  { ignores: ['dist/', 'dist-*/', 'node_modules/', 'coverage/', 'test-artifacts/', 'bench/results/'] },
  js.configs.recommended,
  ...tseslint.configs.recommended,
  {
    rules: {
      // Nest handlers and test fixtures often take arguments they do not read.
      '@typescript-eslint/no-unused-vars': ['error', { argsIgnorePattern: '^_', varsIgnorePattern: '^_' }],
      // Metadata and `any`-typed Nest hosts are part of the job here; casts are reviewed.
      '@typescript-eslint/no-explicit-any': 'off',
      // Exception filters match on Function-typed metatypes, as Nest declares them.
      '@typescript-eslint/no-unsafe-function-type': 'off',
    },
  },
  {
    files: ['sample/public/**/*.js', '**/*.cjs'],
    languageOptions: { globals: { window: 'readonly', document: 'readonly' } },
  },
  prettier,
);
